"""The web side of the live exercises draws the model's replies without loading torch."""

from __future__ import annotations

from tests.subprocess_checks import assert_runs_in_a_fresh_process


def test_rendering_inside_the_model_imports_neither_torch_nor_transformers():
    # A reply as the model server sends it, drawn the way the widget's socket draws it.
    script = (
        "import sys, django; django.setup()\n"
        "import courseapp.asgi, lessons.consumers\n"
        "from django.template.loader import render_to_string\n"
        "from lessons.live_exercises import _inside_view\n"
        "tokens = [{'id': 504, 'text': 'The'}, {'id': 3575, 'text': ' capital'}]\n"
        "lens = [{'layer': 0, 'top': [{'id': 314, 'text': ' is', 'p': 0.5}]}]\n"
        "event = {'tokens': tokens, 'attention': [[1, 0], [0.25, 0.75]], 'lens': lens,\n"
        "         'layer': 0, 'head': 0, 'layers': 1, 'heads': 1}\n"
        "html = render_to_string('exercises/_inside_result.html', _inside_view('w', event, '1x1'))\n"
        'assert \'class="heat-5" title="␣capital → The: 25%"\' in html, html\n'
        "heavy = sorted({'torch', 'transformers', 'workers.inference.inspect'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    assert_runs_in_a_fresh_process(script)
