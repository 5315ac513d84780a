"""The rich dashboard (`xpuctl top`, the demo): draws a dashboard Snapshot, nothing else."""
