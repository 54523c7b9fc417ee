"""Image-only Qwen3-VL processor, copied into tiny model directories and loaded with trust_remote_code.

The stock processor needs a video processor, which needs torchvision; no CPU torchvision exists beside
torch 2.13 here (tiny-mode-reference §1). The class keeps the stock name so verl binds its rope index.
"""

from types import SimpleNamespace

from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor as _StockProcessor


class Qwen3VLProcessor(_StockProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    @property
    def video_processor(self):
        """The image geometry only: LLaMA-Factory's qwen3_vl plugin reads video_processor.merge_size even
        for image-only samples. A property, so it is never written into processor_config.json."""
        images = self.image_processor
        return SimpleNamespace(
            merge_size=images.merge_size,
            patch_size=images.patch_size,
            temporal_patch_size=images.temporal_patch_size,
        )
