from icl_lightning.cli import main

main()
