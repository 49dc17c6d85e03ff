#include "sortedllama/eval/tasks.h"

#include "sortedllama/data/examples.h"
#include "sortedllama/data/records.h"
#include "task_rows.h"

namespace sl {

namespace {
Instruction instruction_record(const nlohmann::json& v, size_t index) {
  require_object(v);
  Instruction it;
  it.id = id_string(v, "id");
  if (it.id.empty()) it.id = id_string(v, "question_id");
  if (it.id.empty()) it.id = std::to_string(index);
  if (v.contains("instruction")) it.instruction = required_string(v, "instruction", /*allow_empty=*/true);
  else if (v.contains("prompt")) it.instruction = required_string(v, "prompt", /*allow_empty=*/true);  // Koala
  else if (v.contains("turns")) {                                                                        // Vicuna: first turn
    auto turns = string_array(v["turns"], "turns");
    if (turns.empty()) throw BadRecord("field \"turns\" is empty");
    it.instruction = turns[0];
  } else {
    throw BadRecord("missing field \"instruction\" (or \"prompt\", \"turns\")");
  }
  if (it.instruction.empty()) throw BadRecord("the instruction is empty");
  it.input = optional_string(v, "input");
  it.reference = optional_string(v, "output");
  if (auto inst = v.find("instances"); inst != v.end()) {  // self-instruct: the first instance
    if (!inst->is_array() || inst->empty() || !(*inst)[0].is_object())
      throw BadRecord(type_error("field \"instances\"", *inst, "a non-empty array of objects"));
    it.input = optional_string((*inst)[0], "input");
    it.reference = optional_string((*inst)[0], "output");
  }
  return it;
}
}  // namespace

std::vector<Instruction> load_instructions(const std::string& path) {
  std::vector<Instruction> items;
  for (const Record& r : read_records(path))
    items.push_back(with_location(r.where, [&] { return instruction_record(r.value, items.size()); }));
  if (items.empty()) throw std::runtime_error(path + ": no instructions");
  return items;
}

TaskResult eval_instruct(Llama& model, const Tokenizer& tok, const std::vector<Instruction>& items,
                         const std::vector<int>& exits, const EvalGenOptions& opt) {
  std::vector<std::vector<int>> prompts;
  bool references = true;
  for (const auto& it : items) {
    prompts.push_back(tok.encode(alpaca_prompt(it.instruction, it.input), /*bos=*/true));
    references = references && !it.reference.empty();
  }
  EvalGenOptions o = opt;
  const int L = (int)model->config().n_layers;
  Progress progress("instruct", (int64_t)(items.size() * decode_rows(opt, exits, L).size()));
  o.on_batch = [&](int64_t n) { progress.add(n); };
  TaskResult r("instruct", (int64_t)items.size(), (int64_t)items.size());
  for (const ExitGenerations& eg : eval_generate(model, prompts, exits, o)) {
    ResultRow row = generation_row(eg);
    std::vector<double> rouge, f1, exact, len;
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string out = tok.decode(eg.gens[i].tokens);
      // Exact match after trimming whitespace (for sets with checkable answers, e.g. data synth).
      auto trim = [](const std::string& t) {
        const size_t b = t.find_first_not_of(" \t\r\n"), e = t.find_last_not_of(" \t\r\n");
        return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
      };
      ojson s = {{"id", items[i].id}, {"instruction", items[i].instruction}, {"input", items[i].input}, {"output", out}};
      s.update(sample_exit_fields(eg, L));
      s["finish_reason"] = eg.gens[i].finish_reason;
      if (references) {
        rouge.push_back(rouge_l(out, items[i].reference));
        f1.push_back(token_f1(out, items[i].reference));
        exact.push_back(trim(out) == trim(items[i].reference) ? 1.0 : 0.0);
        s["reference"] = items[i].reference;
      }
      len.push_back((double)eg.gens[i].tokens.size());
      row.samples.push_back(std::move(s));
    }
    if (references) row.metrics = {{"exact_match", mean_of(exact)}, {"rouge_l", mean_of(rouge)}, {"f1", mean_of(f1)}};
    row.metrics["mean_new_tokens"] = mean_of(len);
    row.metrics["n"] = (int64_t)items.size();
    add_decode_metrics(row.metrics, eg);
    r.rows.push_back(std::move(row));
  }
  return r;
}

}  // namespace sl
