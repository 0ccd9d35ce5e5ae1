"""Settings for detection (owned by distillguard.detect)."""

from pydantic import BaseModel


class DetectConfig(BaseModel):
    #: run the online detection worker inside `serve`
    enabled: bool = True
