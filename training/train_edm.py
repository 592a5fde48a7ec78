"""Train EDM / VP / VE / iDDPM denoisers or learned-variance DDPMs with Accelerate.

    accelerate launch training/train_edm.py --output_dir runs/digits --label_column label
    diffusers-edm-train --output_dir runs/digits --label_column label        # the same, installed console command

The implementation lives in ``diffusers_edm.training.train`` so that the console command and this script are one.
"""

from diffusers_edm.training.train import main

if __name__ == "__main__":
    main()
