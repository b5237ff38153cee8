from vitq.cli import run

run()
