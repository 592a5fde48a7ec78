"""``diffusers-edm-fid`` as a script file, for ``accelerate launch`` in tests/test_fid.py: the same two lines that
pip's console-script wrapper runs (``accelerate launch $(which diffusers-edm-fid) ...``)."""

from diffusers_edm.evaluation.fid import cli

if __name__ == "__main__":
    cli()
