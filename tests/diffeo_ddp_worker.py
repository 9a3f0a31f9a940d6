"""Run by test_diffeo_training.py under ``torchrun --nproc_per_node=2``: a tiny train-diffeo run with DDP (gloo);
each rank writes the initial and final weights of its own network so the test can compare them."""
import os
import sys
from pathlib import Path

import torch

from DeepRegistrationLib.networks.momentum_unet import MomentumUNetConfig
from DeepRegistrationLib.training import diffeo_trainer as diffeo

networks, initial_weights = [], []


class RecordedUNet(diffeo.MomentumUNet):
    def __init__(self, config):
        super().__init__(config)
        networks.append(self)
        initial_weights.append({k: v.clone() for k, v in self.state_dict().items()})


if __name__ == "__main__":
    torch.set_num_threads(1)
    pairs, out = sys.argv[1], Path(sys.argv[2])
    diffeo.MomentumUNet = RecordedUNet
    settings = diffeo.DiffeoTraining(config=MomentumUNetConfig(channels=2), patch_size=16, batch_size=2,
                                     volumes_at_once=2, patches_per_volume=2, groups_per_epoch=1, epochs=2,
                                     spacing_mm=4.0, learning_rate=1e-2, augment=False)
    diffeo.train(settings, diffeo.PairSource.from_csv(pairs, settings), out / "model.pt", device="cpu")
    torch.save({"initial": initial_weights[0], "weights": networks[0].state_dict(), "world": int(os.environ["WORLD_SIZE"])},
               out / f"rank{os.environ['RANK']}.pt")
