# The x86-64-v3 build of cnorm._kernels: the same functions.
from cnorm._kernels import (
    bn_backward as bn_backward, bn_infer as bn_infer, bn_train as bn_train,
    bn_backward_fast as bn_backward_fast, bn_infer_fast as bn_infer_fast,
    bn_train_fast as bn_train_fast,
    moment_stats as moment_stats, rows_fast as rows_fast,
    rows_forward_fast as rows_forward_fast, add_rows_fast as add_rows_fast,
    rows_backward_fast as rows_backward_fast, set_bfloat16_type as set_bfloat16_type,
    set_prefetch_bursts as set_prefetch_bursts,
    groups_fast as groups_fast,
    norm_groups as norm_groups, norm_groups_backward as norm_groups_backward,
    norm_planes as norm_planes, norm_planes_backward as norm_planes_backward,
    norm_rows as norm_rows, norm_rows_backward as norm_rows_backward,
)
