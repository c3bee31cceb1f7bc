"""`python -m ecdit ...` is the `ecdit` command."""
import sys

from ecdit.app.cli import main

sys.exit(main())
