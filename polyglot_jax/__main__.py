import sys

from polyglot_jax.cli import main

sys.exit(main())
