"""The application: `cli` (the `ecdit` command), `demo`, `compare`, `reports` (evaluation and
score tables), `heatmap` (Fig. 6) and `plots` (loss curves)."""
