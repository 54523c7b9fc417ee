"""The export after Stages 2 and 3: verl's FSDP checkpoint of the actor, as its checkpoint manager writes
it from an FSDP2-sharded policy (two processes on gloo), merged by `verl.model_merger` through
`prism.verl.run.export_actor` into a Hugging Face model that the next stages load."""

import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoModelForImageTextToText

from prism.cluster.ray_cluster import free_port
from prism.verl.run import export_actor

# what verl's FSDP engine does to the actor for strategy fsdp2: decoder layers and the root sharded over a
# mesh named "fsdp", one AdamW step, then FSDPCheckpointManager.save_checkpoint (shards + huggingface/)
SAVE_ACTOR = """
    import sys

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForImageTextToText
    from verl.trainer.config import CheckpointConfig
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    from prism.core.modeling import load_processor

    model_dir, actor_dir, full_file = sys.argv[1:4]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("fsdp",))
    for layer in model.model.language_model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 400, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    manager = FSDPCheckpointManager(
        model=model,
        optimizer=optimizer,
        lr_scheduler=None,
        processing_class=load_processor(model_dir),
        checkpoint_config=CheckpointConfig(save_contents=["model", "optimizer", "extra"]),
    )
    manager.save_checkpoint(local_path=actor_dir, global_step=1)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save(full, full_file)
    dist.destroy_process_group()
"""


def test_verls_merger_turns_the_fsdp_actor_checkpoint_into_the_trained_hugging_face_model(tiny_dir, tmp_path):
    script = tmp_path / "save_actor.py"
    script.write_text(textwrap.dedent(SAVE_ACTOR))
    actor, full_file, out = tmp_path / "global_step_1" / "actor", tmp_path / "full.pt", tmp_path / "export"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    saved = subprocess.run(
        [*command, str(script), str(tiny_dir), str(actor), str(full_file)],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert sorted(p.name for p in actor.glob("model_world_size_2_rank_*.pt")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]

    export_actor(actor, out)

    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert type(merged).__name__ == "Qwen3VLForConditionalGeneration"
    trained, base = torch.load(full_file), AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    weights = merged.state_dict()
    assert weights.keys() == trained.keys()
    # the trained weights, in bf16 (the merger's dtype), not the base's
    rounding = max((weights[k] - trained[k]).abs().max().item() for k in trained)
    moved = max((base[k] - trained[k]).abs().max().item() for k in trained)
    assert rounding <= 4e-3 < moved
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
