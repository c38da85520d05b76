"""The procedural audio-visual world: a plugin of the core, never imported by it.

`synth/` generates the AudioCanvas-style corpus (every event, position and degradation known);
`planner` is the offline CoT planner built for that world's videos (registered as "offline" and
found by `cot.planners.BUILTIN_PLUGINS`); `train_judges` and `train_visual` train the offline judges
and the planner's visual classifier on its corpus. The core (pipeline, metrics, judges, rewards)
works on any data: what it needs from this world (class names, scene graphs) arrives as plain data,
in checkpoints' config.json and manifest rows.
"""
