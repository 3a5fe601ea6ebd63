//! Spec words become trainer types here, and nowhere else: one `From` (or
//! `TryFrom`, where the trainer cannot serve every word) per pair.
//!
//! Spec types stay separate from trainer types (a spec is text a user
//! wrote; the trainer's are what runs), and every spelling is matched
//! exhaustively, so a word added on one side fails to build until the
//! other side knows it. Not here: loading anything (`recipe`).

use trainer::data::Format;
use trainer::device::ComputeBackend;
use trainer::lora::TargetModule;
use trainer::train::schedule::Schedule;

use crate::spec;

impl From<spec::Schedule> for Schedule {
    fn from(s: spec::Schedule) -> Schedule {
        match s {
            spec::Schedule::Constant => Schedule::Constant,
            spec::Schedule::Linear => Schedule::Linear,
            spec::Schedule::Cosine => Schedule::Cosine,
        }
    }
}

impl From<spec::TargetModule> for TargetModule {
    fn from(m: spec::TargetModule) -> TargetModule {
        match m {
            spec::TargetModule::QProj => TargetModule::QProj,
            spec::TargetModule::KProj => TargetModule::KProj,
            spec::TargetModule::VProj => TargetModule::VProj,
            spec::TargetModule::OProj => TargetModule::OProj,
            spec::TargetModule::GateProj => TargetModule::GateProj,
            spec::TargetModule::UpProj => TargetModule::UpProj,
            spec::TargetModule::DownProj => TargetModule::DownProj,
        }
    }
}

impl From<spec::DatasetFormat> for Format {
    fn from(f: spec::DatasetFormat) -> Format {
        match f {
            spec::DatasetFormat::Auto => Format::Auto,
            spec::DatasetFormat::Text => Format::Text,
            spec::DatasetFormat::Completion => Format::Completion,
            spec::DatasetFormat::Chat => Format::Chat,
            spec::DatasetFormat::Alpaca => Format::Alpaca,
            spec::DatasetFormat::ShareGpt => Format::ShareGpt,
        }
    }
}

/// `resources.backend` names a backend this build cannot have.
#[derive(Debug, thiserror::Error)]
#[error("resources.backend: {0} is not built into lorafleet yet; use cpu or cuda")]
pub struct UnsupportedBackend(pub spec::Backend);

impl TryFrom<spec::Backend> for ComputeBackend {
    type Error = UnsupportedBackend;

    fn try_from(b: spec::Backend) -> Result<ComputeBackend, UnsupportedBackend> {
        match b {
            spec::Backend::Cpu => Ok(ComputeBackend::Cpu),
            spec::Backend::Cuda => Ok(ComputeBackend::Cuda),
            spec::Backend::Tch => Err(UnsupportedBackend(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_word_becomes_the_trainer_value_of_the_same_name() {
        for &s in spec::Schedule::ALL {
            assert_eq!(Schedule::from(s), Schedule::parse(s.name()).unwrap());
        }
        for &m in spec::TargetModule::ALL {
            assert_eq!(
                TargetModule::from(m),
                TargetModule::parse(m.name()).unwrap()
            );
        }
        for &f in spec::DatasetFormat::ALL {
            assert_eq!(Format::from(f), f.name().parse::<Format>().unwrap());
        }
        for &b in spec::Backend::ALL {
            match ComputeBackend::try_from(b) {
                Ok(c) => assert_eq!(c.name(), b.name()),
                Err(e) => {
                    assert_eq!(b, spec::Backend::Tch);
                    assert!(e.to_string().contains("use cpu or cuda"), "{e}");
                }
            }
        }
    }
}
