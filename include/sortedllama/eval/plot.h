// SVG line charts of a metric against the exit layer (the paper's per-layer figures). No torch.
#pragma once
#include <string>
#include <vector>

namespace sl {

struct PlotSeries {
  std::string name;         // legend entry (a run)
  std::vector<double> x, y;  // exit layers and the metric there, same length
};

// A self-contained SVG document: one line with markers per series, axes with ticks, legend.
std::string svg_line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<PlotSeries>& series);

}  // namespace sl
