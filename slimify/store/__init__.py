"""Files and model sources: the ``.slim`` format (atomic writes), timm/torchvision/slimify model
factories, checkpoints."""
