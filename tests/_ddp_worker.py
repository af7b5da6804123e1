"""One process of the distributed-training test: ``torchrun --nproc_per_node 2 _ddp_worker.py DIR``.

``build_case`` is shared with tests/test_training.py, which trains the same case in one process and
compares the losses and the weights with the checkpoint this run leaves in DIR.
"""
import sys

import torch

from nvwavenet.data import TrainingWindows, chirp
from nvwavenet.mel import MelConfig
from nvwavenet.model import WaveNet
from nvwavenet.training import TrainConfig, train


def build_case(checkpoint_dir):
    torch.manual_seed(0)
    model = WaveNet(n_in_channels=64, n_layers=4, max_dilation=4, n_residual_channels=8, n_skip_channels=16,
                    n_out_channels=64, n_cond_channels=4, upsamp_window=32, upsamp_stride=16)
    mel = MelConfig(sample_rate=8000, n_fft=128, hop_length=16, win_length=128, n_mels=4, fmax=4000)
    clips = [chirp(200, 2000, 8000, 1200), chirp(3000, 500, 8000, 900)]
    windows = TrainingWindows(clips, 8000, model, targets_per_window=96, mel=mel)
    config = TrainConfig(steps=4, batch_size=4, learning_rate=1e-2, seed=3, progress=False,
                         checkpoint_dir=checkpoint_dir)
    return model, windows, config


if __name__ == "__main__":
    train(*build_case(sys.argv[1]))
