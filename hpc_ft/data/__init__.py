"""Training data: files read with `datasets`, row formats, NeMo-syntax and chat templates, submit-time checks, and data preparers.

The API other parts build on (one module each, no torch needed):

* `spec`      DataOptions (format, columns, template, loss) and SplitFiles from a JobSpec; the job arguments.
* `files`     read_data_file(path) -> DataFile (columns, rows, where(i) = "file:line"); bad files -> UserError.
* `formats`   FORMATS: nemo, alpaca, chat, sharegpt, columns -> Example (fields or chat turns).
* `templates` FieldTemplate (NeMo's prompt_template) and ChatTemplate (apply_chat_template) -> Rendered
              (segments with the loss part marked, the generation prompt, the reference label).
* `dataset`   load_file(path, options, tokenizer) -> LoadedFile (prompts, answers, labels, rendered).
* `checks`    check_job_data(spec) at submit (summary lines for stderr); backend_data_files() for nemo.
* `lengths`   token counts from the model's tokenizer.json (tokenizers), or characters, said so.
* `sources`   preparers of the data presets (JCommonsenseQA, synthetic alpaca).
"""
