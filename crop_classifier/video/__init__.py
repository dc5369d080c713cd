"""Video and streams: track objects, classify each one at its best views, vote (``run_tracking``).

Modules: ``sources`` (frames from files, image sequences, cameras, streams), ``tracking`` (track ids from a
kept library), ``temporal`` (re-inference policy and the track vote), ``loop`` (one frame: detect, track,
classify what is due, fuse), ``run`` (outputs of a ``--track`` run), ``sv_interop`` (supervision).
Nothing here imports Detectron2; ``norfair`` is imported when a tracker is built.
"""
from .loop import TrackedFrame, TrackingLoop, TrackOptions
from .run import RunOptions, run_tracking
from .sources import Frame, FrameSource, SourceOptions, open_source
from .temporal import VOTE_MODES, ReinferOptions, resolution_weight
from .tracking import TrackerOptions

__all__ = ["Frame", "FrameSource", "SourceOptions", "open_source", "TrackerOptions", "ReinferOptions", "VOTE_MODES",
           "resolution_weight", "TrackOptions", "TrackedFrame", "TrackingLoop", "RunOptions", "run_tracking"]
