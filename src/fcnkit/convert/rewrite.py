"""Apply a :class:`~fcnkit.convert.plan.Plan`: the traced classifier's graph becomes the FCN's graph."""

from __future__ import annotations

from torch import fx

from fcnkit.convert.plan import Plan


def apply_plan(gm: fx.GraphModule, plan: Plan) -> fx.GraphModule:
    """Rewrite ``gm`` in place as ``plan`` says; return it recompiled."""
    for target, module in plan.modules.items():
        parent, _, name = target.rpartition(".")
        setattr(gm.get_submodule(parent), name, module)
    for node in plan.remove:
        node.replace_all_uses_with(node.all_input_nodes[0])
        gm.graph.erase_node(node)
    for i, (node, pool) in enumerate(plan.pools.items()):
        if node.op == "call_module":
            parent, _, name = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent), name, pool)
            continue
        target = f"sliding_pool{i}"
        gm.add_submodule(target, pool)
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(target, (node.all_input_nodes[0],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    for node, op in plan.softmax_dim.items():  # the classes are dim 1 of the (N, K, H', W') grid
        if node.op == "call_module":
            gm.get_submodule(str(node.target)).dim = 1
        elif "dim" in node.kwargs or len(node.args) <= op.args["dim_index"]:
            node.update_kwarg("dim", 1)
        else:
            node.update_arg(op.args["dim_index"], 1)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
