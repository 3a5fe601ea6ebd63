# Sourced by bench/compare_*.sh from the repository root: sets PYTHON to an
# interpreter with the reference tools (PyTorch, transformers, PEFT), making
# the venv .venv-ref from tests/fixtures/requirements.txt if it is missing,
# and builds the release binary as $bin.
PYTHON="${PYTHON:-.venv-ref/bin/python}"
if ! "$PYTHON" -c "import peft, transformers, torch.distributed" 2>/dev/null; then
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install -q -r tests/fixtures/requirements.txt
    PYTHON=.venv-ref/bin/python
fi
cargo build --release --locked -q
bin=target/release/lorafleet
