"""Settings for the distillation pipeline (owned by distillguard.distill)."""

from pydantic import BaseModel


class DistillConfig(BaseModel):
    pass
