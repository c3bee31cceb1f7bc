"""The core, NumPy only: `config` (the frozen configs, presets, capacity), `checks` (the argument
contract language), `contracts` (every public function's contract, shared by both halves) and
`params` (parameter initialisation and counting)."""
