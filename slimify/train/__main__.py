"""``python -m slimify.train`` (and ``torchrun -m slimify.train``) runs the slimify CLI, e.g.
``torchrun --nproc_per_node 4 -m slimify.train finetune resnet50 --data IMAGENET``."""
from slimify.cli.app import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
