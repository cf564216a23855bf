"""The teacher: an open_clip vision-language model and the zero-shot classifier built from it."""

from zmdist.teacher.loading import Teacher, load_teacher, register_model_configs
from zmdist.teacher.templates import TEMPLATE_SETS, get_templates, prompt_names
from zmdist.teacher.zeroshot import build_zeroshot_classifier

__all__ = [
    "TEMPLATE_SETS",
    "Teacher",
    "build_zeroshot_classifier",
    "get_templates",
    "load_teacher",
    "prompt_names",
    "register_model_configs",
]
