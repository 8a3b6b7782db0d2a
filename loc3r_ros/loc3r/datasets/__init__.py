"""Datasets on disk: our scene/annotation format, ScanNet exports and SQA3D annotations."""

from loc3r.datasets.format import (
    Annotation,
    DatasetError,
    DatasetFrame,
    SceneData,
    SceneWriter,
    export_synthetic,
    list_scenes,
    read_annotations,
    read_annotations_file,
    read_scene,
    write_annotations,
    write_scene,
)
from loc3r.datasets.scannet import ScanNetReport, convert_scannet_scene
from loc3r.datasets.sqa3d import (
    Sqa3dFrame,
    Sqa3dReport,
    bev_to_world_pose,
    convert_sqa3d,
    world_to_bev_pose,
)

__all__ = [
    "Annotation",
    "DatasetError",
    "DatasetFrame",
    "ScanNetReport",
    "SceneData",
    "SceneWriter",
    "Sqa3dFrame",
    "Sqa3dReport",
    "bev_to_world_pose",
    "convert_scannet_scene",
    "convert_sqa3d",
    "export_synthetic",
    "list_scenes",
    "read_annotations",
    "read_annotations_file",
    "read_scene",
    "write_annotations",
    "world_to_bev_pose",
    "write_scene",
]
