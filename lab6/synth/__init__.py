"""Synthetic CLEVR-style scenes: a pure-numpy ray caster and a dataset writer in the iCLEVR layout.

- `scene`: the renderer's settings (`SynthConfig`, named looks `LOOKS`), one object (`SceneObject`) and each scene's
  random stream
- `camera`: the jittered camera and lights, the ray grid, where an object lands on screen
- `raycast`: ray-shape intervals, normals and soft shadows
- `render`: shading a scene one added object at a time (`render_scene`, `render_labels`)
- `design`: the label sets: held-out pairs, training scenes, test / new_test / unseen_test
- `writer`: `write_dataset` (resumable, `--like`)
"""
from ..devices import cpu_count  # re-exported: benchmarks/bench_synth.py sizes its workers with it
from ..labels import PALETTE
from .camera import Camera, Lights, sample_camera, sample_lights
from .design import (
                     BINDING_PATTERNS,
                     TEST_SETS,
                     binding_set,
                     is_binding_heavy,
                     object_pairs,
                     sample_held_out,
                     sample_new_test,
                     sample_test,
                     sample_train_labels,
                     unseen_from_train,
)
from .render import RENDER_VERSION, SceneRender, encode_png, render_labels, render_scene
from .scene import LOOKS, MATERIALS, SIZES, SceneObject, SynthConfig, look_config, scene_rng
from .writer import EVALUATOR_NAME, RenderJob, parse_size, render_job, render_jobs, write_dataset

__all__ = ["BINDING_PATTERNS", "EVALUATOR_NAME", "LOOKS", "MATERIALS", "PALETTE", "RENDER_VERSION", "SIZES",
           "TEST_SETS", "Camera", "Lights", "RenderJob", "SceneObject", "SceneRender", "SynthConfig", "binding_set",
           "cpu_count", "encode_png", "is_binding_heavy", "look_config", "object_pairs", "parse_size", "render_job",
           "render_jobs", "render_labels", "render_scene", "sample_camera", "sample_held_out", "sample_lights",
           "sample_new_test", "sample_test", "sample_train_labels", "scene_rng", "unseen_from_train",
           "write_dataset"]
