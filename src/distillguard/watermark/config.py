"""Settings for watermarking (owned by distillguard.watermark)."""

from pydantic import BaseModel


class WatermarkConfig(BaseModel):
    enabled: bool = False
