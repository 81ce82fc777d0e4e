/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `render` and `parse` subcommands of the offline tool (resident-engine).
 * argv[0] is the subcommand name. Both return a process exit status: 0 ok,
 * 1 failure (message on stderr), 2 usage error.
 *
 *   render --model DIR [--tools-as-given]
 *       stdin: {"messages": [...], "tools": [...], "chat_template_kwargs":
 *              {...}, "add_generation_prompt": true}
 *       stdout: the exact prompt text, nothing added
 *       Invalid conversations exit 1 with the template's message, e.g.
 *       "render: No user query found in messages."
 *       --tools-as-given: render tools exactly as in the request (what
 *       transformers does) instead of vLLM's re-shaped tool objects.
 *       The template is the Qwen3.6 one built in; DIR's chat_template.jinja
 *       (or tokenizer_config.json "chat_template") is only compared with it,
 *       and a difference is reported on stderr.
 *
 *   parse --model DIR [--tools FILE] [--thinking on|off] [--deltas] [--fixed-ids]
 *       stdin: raw model output (the text after the prompt)
 *       stdout: {"reasoning": ..., "content": ..., "tool_calls": [...],
 *               "finish_reason": "tool_calls"|"stop"} and a newline
 *       --tools FILE: JSON list of tools (or a request object holding
 *       "tools") whose schemas type the arguments
 *       --thinking off: the prompt disabled thinking (all output is content)
 *       --deltas: first print one JSON line per streaming delta in OpenAI
 *       `delta` shape (chat_delta_to_json; stdin fed in 7-byte pieces),
 *       then the summary line
 *       --fixed-ids: tool call ids call_000…0, call_000…1, … (for tests)
 */
#ifndef RESIDENT_ENGINE_TEXT_TEXT_CLI_CHAT_H
#define RESIDENT_ENGINE_TEXT_TEXT_CLI_CHAT_H

int text_cli_render(int argc, char **argv);
int text_cli_parse(int argc, char **argv);

#endif
