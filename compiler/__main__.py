from squeezeedge.cli import main

main(prog_name="squeezeedge")
