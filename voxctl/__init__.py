"""voxctl: the Voxmesh command line (typer + rich). `voxctl --help` lists the commands."""
