"""`python -m conveyor.cli`: the `conveyor` command (how `conveyor dev` starts services)."""

from conveyor.cli import main

main()
