"""Image-only Qwen3-VL processor, copied into tiny model directories and loaded with trust_remote_code.

The stock processor needs a video processor, which needs torchvision; no CPU torchvision exists beside
torch 2.13 here (tiny-mode-reference §1). The class keeps the stock name so verl binds its rope index.
"""

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
