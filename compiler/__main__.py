from compiler.cli import main

main(prog_name="squeezeedge")
