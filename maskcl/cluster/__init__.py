"""Pseudo-labelling: kNN, sparse k-reciprocal Jaccard distance, DBSCAN, refinement, neighbours.

Submodules import numpy/scipy only at import time (torch and faiss are imported inside the
functions that use them), so importing :mod:`maskcl.cluster` stays cheap.
"""

from maskcl.cluster.jaccard import jaccard_distance, jaccard_from_knn
from maskcl.cluster.knn import knn
from maskcl.cluster.neighbours import cluster_neighbours, curriculum_k
from maskcl.cluster.pseudo_labels import PseudoLabels, generate_pseudo_labels

__all__ = [
    "PseudoLabels",
    "cluster_neighbours",
    "curriculum_k",
    "generate_pseudo_labels",
    "jaccard_distance",
    "jaccard_from_knn",
    "knn",
]
