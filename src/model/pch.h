// Precompiled header: torch costs ~30 s per translation unit on two cores; parse it once.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>
#include <vector>
#include <map>
