from icl_lightning.reproduce.cli import main

main()
