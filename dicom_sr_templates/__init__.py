"""The result templates shipped with ainode (YAML files beside this module).

A package only so that the templates travel in the wheel and are found with
:mod:`importlib.resources`; see ``README.md`` here for the format and
:func:`node.contract.template.load_template_by_name` for how a name is looked up.
"""
