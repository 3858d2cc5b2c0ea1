"""Backbones, the two-branch MaskCL network and its fusion head."""

from maskcl.models.backbone import ReIDBranch, build_trunk, feature_dim
from maskcl.models.network import FusionHead, TrainOutputs, TwoBranchNet, build_network

__all__ = ["FusionHead", "ReIDBranch", "TrainOutputs", "TwoBranchNet", "build_network", "build_trunk", "feature_dim"]
