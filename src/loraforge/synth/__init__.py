"""Training data from a teacher model: generate new examples, or relabel existing inputs, over an OpenAI API.

`synthesize` (`synth generate`) asks the teacher for diverse examples conditioned on a task description and
rotating seed examples; `relabel` asks it for the output of inputs you already have (plain JSONL or chat JSONL
such as gateway logs).
Both validate (labels, JSON Schema, empty/truncated/echoed rows), deduplicate (exact and near, including
against seeds and a test set), retry with backoff, resume from the output file, and record provenance.
"""

from loraforge.synth.relabel import RelabelConfig, relabel
from loraforge.synth.report import Summary
from loraforge.synth.synthesize import GenerateConfig, synthesize
from loraforge.synth.teacher import TeacherClient, TeacherError, TeacherSettings
from loraforge.synth.validation import OutputSpec

__all__ = [
    "GenerateConfig",
    "OutputSpec",
    "RelabelConfig",
    "Summary",
    "TeacherClient",
    "TeacherError",
    "TeacherSettings",
    "synthesize",
    "relabel",
]
