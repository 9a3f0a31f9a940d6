"""Run by test_metric_training.py under ``torchrun --nproc_per_node=2``: a tiny metric training with DDP (gloo);
each rank writes its final weights and pair transforms so the test can compare them."""
import sys
from pathlib import Path

import torch

from DeepRegistrationLib.training.common import distributed
from DeepRegistrationLib.training.metric_trainer import MetricTrainer

sys.path.insert(0, str(Path(__file__).parent))
from test_metric_training import tiny_config, tiny_pairs  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    with distributed("cpu") as d:
        trainer = MetricTrainer(tiny_pairs(), tiny_config(pairs_per_epoch=512, epochs=1), out / "set.pt", None, d,
                                show_progress=False)
        trainer.train()
        torch.save({"weights": trainer.stage_networks[0].state_dict(), "world": d.world_size,
                    "transforms": torch.tensor(trainer.last_transforms)}, out / f"rank{d.rank}.pt")
