"""Batch prediction over files (``stlight predict``), one job per module:

- :mod:`~service.batch.inputs`: find inputs (files and folders, walked) and where their outputs go;
- :mod:`~service.batch.readers`: one reader per input kind (``.npy``, ``.npz``, a folder of
  frame images, an animated ``.gif``, a video file), each giving the input's shape-checked clips;
- :mod:`~service.batch.writers`: the ``.npy`` of predictions (written last and atomically, so
  its presence means the input is done), PNG frames, GIFs and MP4s;
- :mod:`~service.batch.run`: batches shared across inputs, a local or remote predictor, scoring;
- :mod:`~service.batch.online`: ``--report-online``, the server grading each batch by its truth.
"""

from service.batch.inputs import Source, discover, finished
from service.batch.online import OnlineReport
from service.batch.readers import VideoReading
from service.batch.run import Predictor, Rollout, Summary, predict_files

__all__ = [
    "OnlineReport",
    "Predictor",
    "Rollout",
    "Source",
    "Summary",
    "VideoReading",
    "discover",
    "finished",
    "predict_files",
]
