/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `tokenize` and `detokenize` subcommands of the offline tool
 * (resident-engine). argv[0] is the subcommand name. Both return a process
 * exit status: 0 ok, 1 failure (message on stderr), 2 usage error.
 *
 *   Both take --cache-dir DIR: keep a binary cache of the parsed vocabulary
 *   there (see tokenizer_load_ex()), so repeated runs load in milliseconds.
 *
 *   tokenize --model DIR [--no-added-tokens] [--bytes]
 *       stdin: UTF-8 text (all of it, no newline stripped)
 *       stdout: the ids as a JSON array on one line, e.g. [9419,11,1879]
 *       --no-added-tokens: treat <|im_start|> etc. as plain text
 *       --bytes: map every input byte to its byte token (any bytes)
 *
 *   detokenize --model DIR [--skip-special-tokens]
 *       stdin: a JSON array of ids
 *       stdout: the bytes the ids stand for, nothing added
 */
#ifndef RESIDENT_ENGINE_TEXT_TEXT_CLI_TOK_H
#define RESIDENT_ENGINE_TEXT_TEXT_CLI_TOK_H

int text_cli_tokenize(int argc, char **argv);
int text_cli_detokenize(int argc, char **argv);

#endif
