"""squeezeedge: SqueezeBERT -> ONNX -> calibrated int8 -> tuned TVM libraries for edge boards.

Each stage is a plain function; the CLI (squeezeedge.cli) only parses, validates, calls and prints.
Heavy libraries (torch, tvm, onnxruntime) are imported inside the stage functions.
"""

from squeezeedge.artifact import Artifact, load_artifact
from squeezeedge.errors import SqueezeEdgeError
from squeezeedge.stages.export import ExportConfig, export_model
from squeezeedge.targets import Target, load_target

__all__ = ["Artifact", "ExportConfig", "SqueezeEdgeError", "Target", "export_model", "load_artifact", "load_target"]
__version__ = "0.1.0"
