//! The client config file: where the coordinator is (`coordinator`), the
//! tenant token (`token`) and the CA bundle to trust (`ca`), for the
//! commands that call a coordinator as a tenant (`submit`, `jobs`,
//! `logs`, ...). Each is used when neither its flag nor its environment
//! variable gives it: flag > environment > file > built-in default.
//!
//! ```yaml
//! # ~/.config/lorafleet/config.yaml
//! coordinator: https://fleet.example.com:7070
//! token: tok-...
//! ca: fleet-ca.pem        # relative to this file's folder; ~/ is the home folder
//! ```
//!
//! The file is `$LORAFLEET_CONFIG` when set (it must then exist), else
//! `$XDG_CONFIG_HOME/lorafleet/config.yaml`, else
//! `~/.config/lorafleet/config.yaml` (a missing one is no config). It is
//! read only when a value is missing. A file that is not YAML, has other
//! keys or values of the wrong kind is an error naming `file:line:col`;
//! a file holding a token that others may read (mode & 0o077, as ssh
//! checks its keys) is refused.
//!
//! Not here: the flags (`cli::RemoteArgs`), connecting (`connection`), a
//! worker's settings (workers take flags and environment only).

use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::cli::{Command, RemoteArgs};
use crate::commands::UsageError;

/// The variable naming the config file.
pub const CONFIG_ENV: &str = "LORAFLEET_CONFIG";

/// The largest config file read, in bytes.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// What the file may say.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    coordinator: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

/// Fills the coordinator flags of `command` (parsed into `matches`) that
/// neither a flag nor the environment gave from the config file.
pub fn fill(command: &mut Command, matches: &ArgMatches) -> anyhow::Result<()> {
    let Some(remote) = command.remote_mut() else {
        return Ok(());
    };
    let coordinator_given = matches
        .subcommand()
        .and_then(|(_, sub)| sub.value_source("coordinator"))
        .is_some_and(|source| source != ValueSource::DefaultValue);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let place = ConfigPlace {
        explicit: std::env::var_os(CONFIG_ENV).map(PathBuf::from),
        xdg_config_home: std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        home: home.clone(),
    };
    fill_from(remote, coordinator_given, &place, home.as_deref())
}

/// Where the config file may be.
struct ConfigPlace {
    explicit: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
}

impl ConfigPlace {
    /// The file to read, and whether it was named (then it must exist).
    fn path(&self) -> Option<(PathBuf, bool)> {
        let non_empty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = non_empty(&self.explicit) {
            return Some((path, true));
        }
        // The XDG base directory rules: a relative value is ignored.
        let base = non_empty(&self.xdg_config_home)
            .filter(|p| p.is_absolute())
            .or_else(|| non_empty(&self.home).map(|home| home.join(".config")))?;
        Some((base.join("lorafleet").join("config.yaml"), false))
    }
}

fn fill_from(
    remote: &mut RemoteArgs,
    coordinator_given: bool,
    place: &ConfigPlace,
    home: Option<&Path>,
) -> anyhow::Result<()> {
    if coordinator_given && remote.token.is_some() && remote.ca.is_some() {
        return Ok(());
    }
    let Some((path, explicit)) = place.path() else {
        return Ok(());
    };
    let Some(config) = read(&path, explicit, home)? else {
        return Ok(());
    };
    if !coordinator_given && let Some(coordinator) = config.coordinator {
        remote.coordinator = coordinator;
    }
    if remote.token.is_none() {
        remote.token = config.token;
    }
    if remote.ca.is_none() {
        remote.ca = config.ca;
    }
    Ok(())
}

/// The config file at `path`; `None` when it does not exist and was not
/// named. `ca` comes back resolved against the file's folder (`~/` against
/// `home`).
fn read(path: &Path, explicit: bool, home: Option<&Path>) -> anyhow::Result<Option<ClientConfig>> {
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            let named = if explicit {
                format!(" (named by {CONFIG_ENV})")
            } else {
                String::new()
            };
            return Err(
                UsageError(format!("cannot read the config file {shown}{named}: {e}")).into(),
            );
        }
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(&file, MAX_CONFIG_BYTES + 1),
        &mut text,
    )
    .map_err(|e| UsageError(format!("cannot read the config file {shown}: {e}")))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(UsageError(format!(
            "{shown}: a config file is at most {MAX_CONFIG_BYTES} bytes"
        ))
        .into());
    }
    let mut config = parse(&text, &shown.to_string())?;
    if config.token.is_some() {
        refuse_if_others_can_read(&file, path)?;
    }
    config.coordinator = config.coordinator.filter(|c| !c.trim().is_empty());
    config.token = config.token.filter(|t| !t.trim().is_empty());
    let folder = path.parent().unwrap_or(Path::new("."));
    config.ca = config.ca.filter(|ca| !ca.as_os_str().is_empty()).map(|ca| {
        match (ca.strip_prefix("~"), home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ => folder.join(ca),
        }
    });
    Ok(Some(config))
}

/// Reads config `text`; errors name `shown:line:col`.
fn parse(text: &str, shown: &str) -> Result<ClientConfig, UsageError> {
    use serde_saphyr::MessageFormatter as _;
    if text.trim().is_empty() {
        return Ok(ClientConfig::default());
    }
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<Option<ClientConfig>>(text, options)
        .map(Option::unwrap_or_default)
        .map_err(|error| {
            let message = serde_saphyr::UserMessageFormatter.format_message(&error);
            let message = message.trim_end_matches('.');
            let at = error
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            UsageError(format!("{shown}{at}: {message}"))
        })
}

/// A token in a file that others may read is refused, as ssh refuses such
/// keys.
#[cfg(unix)]
fn refuse_if_others_can_read(file: &std::fs::File, path: &Path) -> Result<(), UsageError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .map_err(|e| {
            UsageError(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(UsageError(format!(
            "the config file {shown} holds a token and others can read it (mode {mode:04o}); make it private: chmod 600 {shown}",
            shown = path.display(),
            mode = mode & 0o7777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_others_can_read(_file: &std::fs::File, _path: &Path) -> Result<(), UsageError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RemoteArgs {
        RemoteArgs {
            coordinator: "http://127.0.0.1:7070".into(),
            token: None,
            ca: None,
        }
    }

    fn place(dir: &Path) -> ConfigPlace {
        ConfigPlace {
            explicit: None,
            xdg_config_home: Some(dir.join("xdg")),
            home: Some(dir.join("home")),
        }
    }

    fn write_config(path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    #[test]
    fn the_file_is_found_where_xdg_and_the_variable_say() {
        let dir = Path::new("/x");
        let mut p = place(dir);
        assert_eq!(
            p.path(),
            Some((dir.join("xdg/lorafleet/config.yaml"), false))
        );
        p.xdg_config_home = Some("relative".into());
        assert_eq!(
            p.path(),
            Some((dir.join("home/.config/lorafleet/config.yaml"), false))
        );
        p.explicit = Some("/etc/lf.yaml".into());
        assert_eq!(p.path(), Some(("/etc/lf.yaml".into(), true)));
        let nowhere = ConfigPlace {
            explicit: None,
            xdg_config_home: None,
            home: None,
        };
        assert_eq!(nowhere.path(), None);
    }

    #[test]
    fn the_file_fills_only_what_flags_and_environment_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xdg/lorafleet/config.yaml");
        write_config(
            &file,
            "coordinator: http://10.0.0.1:9\ntoken: from-file\nca: ca.pem\n",
            0o600,
        );
        let mut args = remote();
        fill_from(&mut args, false, &place(dir.path()), None).unwrap();
        assert_eq!(args.coordinator, "http://10.0.0.1:9");
        assert_eq!(args.token.as_deref(), Some("from-file"));
        assert_eq!(args.ca, Some(dir.path().join("xdg/lorafleet/ca.pem")));
        let mut args = RemoteArgs {
            coordinator: "http://given:1".into(),
            token: Some("given".into()),
            ca: None,
        };
        fill_from(&mut args, true, &place(dir.path()), None).unwrap();
        assert_eq!(args.coordinator, "http://given:1");
        assert_eq!(args.token.as_deref(), Some("given"));
        assert!(args.ca.is_some());
    }

    #[test]
    fn a_missing_file_is_no_config_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = remote();
        fill_from(&mut args, false, &place(dir.path()), None).unwrap();
        assert_eq!(args.coordinator, "http://127.0.0.1:7070");
        assert_eq!(args.token, None);
        let named = ConfigPlace {
            explicit: Some(dir.path().join("absent.yaml")),
            ..place(dir.path())
        };
        let err = fill_from(&mut args, false, &named, None).unwrap_err();
        assert!(err.is::<UsageError>());
        assert!(err.to_string().contains(CONFIG_ENV), "{err}");
    }

    #[test]
    fn bad_files_are_errors_naming_file_line_and_column() {
        let shown = "config.yaml";
        let err = parse("coordinator: http://a:1\ntokn: x\n", shown).unwrap_err();
        assert!(err.0.starts_with("config.yaml:2:"), "{err}");
        assert!(err.0.contains("tokn"), "{err}");
        let err = parse("token: [a, b]\n", shown).unwrap_err();
        assert!(err.0.starts_with("config.yaml:1:"), "{err}");
        let err = parse("coordinator: \"http://a:1\n", shown).unwrap_err();
        assert!(err.0.starts_with("config.yaml:"), "{err}");
        assert_eq!(parse("", shown).unwrap(), ClientConfig::default());
        assert_eq!(
            parse("# nothing\n", shown).unwrap(),
            ClientConfig::default()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xdg/lorafleet/config.yaml");
        write_config(&file, "token: secret\n", 0o644);
        let err = fill_from(&mut remote(), false, &place(dir.path()), None).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(err.to_string().contains("0644"), "{err}");
        // Without a token, the mode does not matter.
        write_config(&file, "coordinator: http://10.0.0.1:9\n", 0o644);
        let mut args = remote();
        fill_from(&mut args, false, &place(dir.path()), None).unwrap();
        assert_eq!(args.coordinator, "http://10.0.0.1:9");
    }

    #[test]
    fn a_ca_under_home_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xdg/lorafleet/config.yaml");
        write_config(&file, "ca: ~/certs/ca.pem\n", 0o600);
        let mut args = remote();
        fill_from(
            &mut args,
            false,
            &place(dir.path()),
            Some(Path::new("/home/me")),
        )
        .unwrap();
        assert_eq!(args.ca, Some(PathBuf::from("/home/me/certs/ca.pem")));
    }
}
