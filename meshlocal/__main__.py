from meshlocal.cli.app import run

run()
