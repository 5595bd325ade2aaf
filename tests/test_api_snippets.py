"""The "Use via API" page's examples of the streaming endpoints use ``submit`` and iterate (Gradio 6.31
writes ``predict`` for every endpoint): the rewrite of Gradio's own snippets, on their exact shape."""

from __future__ import annotations

from gradio_client.snippet import generate_code_snippets

from ui.api_docs import rewrite_info, streaming_js, streaming_python

PARAMS = [{"parameter_name": "message", "parameter_has_default": False, "example_input": "Hi",
           "python_type": {"type": "str"}, "component": "Textbox"},
          {"parameter_name": "history", "parameter_has_default": True, "parameter_default": [],
           "python_type": {"type": "List[Dict[str, Any]]"}, "component": "State"}]


def gradios(api_name: str) -> dict:
    return generate_code_snippets(api_name, {"parameters": PARAMS}, "http://127.0.0.1:7860/")


def test_a_streaming_endpoints_python_example_submits_and_iterates():
    code = streaming_python(gradios("/chat")["python"])
    assert "job = client.submit(" in code and "predict" not in code
    assert "for out in job:" in code and "result = job.result()" in code
    compile(code, "<page>", "exec")  # still Python


def test_a_streaming_endpoints_javascript_example_submits_and_iterates():
    code = streaming_js(gradios("/chat")["javascript"])
    assert "const job = client.submit(\"/chat\"" in code and "predict" not in code
    assert "for await (const msg of job)" in code


def test_only_the_streaming_endpoints_are_rewritten():
    info = {"named_endpoints": {"/chat": {"code_snippets": gradios("/chat")},
                                "/stats": {"code_snippets": gradios("/stats")}}}
    out = rewrite_info(info, {"/chat"})["named_endpoints"]
    assert "client.submit(" in out["/chat"]["code_snippets"]["python"]
    assert "client.predict(" in out["/stats"]["code_snippets"]["python"]
    assert out["/chat"]["code_snippets"]["bash"] == gradios("/chat")["bash"]


def test_a_snippet_of_another_shape_is_left_alone():
    assert streaming_python("print(1)") == "print(1)" and streaming_js("x") == "x"
