"""`python -m aifeedback` (and `accelerate launch -m aifeedback ...`) run the `aif` CLI."""

from aifeedback.cli import main

main()
