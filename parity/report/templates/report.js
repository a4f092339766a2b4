(function () {
  "use strict";
  var table = document.getElementById("layer-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("filter");
  var onlyFlagged = document.getElementById("only-flagged");
  var unfold = document.getElementById("unfold");

  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    if (numeric) {
      var v = parseFloat(cell.getAttribute("data-v"));
      return isNaN(v) ? Infinity : v;
    }
    return cell.textContent.trim().toLowerCase();
  }

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      var numeric = th.getAttribute("data-sort") === "num";
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      rows.sort(function (x, y) {
        var a = cellValue(x, col, numeric), b = cellValue(y, col, numeric);
        var order = a < b ? -1 : a > b ? 1 : 0;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });

  function applyFilter() {
    var needle = filter.value.trim().toLowerCase();
    var flaggedOnly = onlyFlagged.checked;
    rows.forEach(function (row) {
      var text = row.cells[1].textContent + " " + row.cells[2].textContent;  // each side's name and op
      var hide = (needle && text.toLowerCase().indexOf(needle) < 0) || (flaggedOnly && row.getAttribute("data-flagged") !== "1");
      row.classList.toggle("hidden", !!hide);
      // a search or the flagged-only view looks through folded rows too
      if (needle || flaggedOnly) { row.classList.add("unfolded"); }
    });
  }
  filter.addEventListener("input", applyFilter);
  onlyFlagged.addEventListener("change", applyFilter);

  if (unfold) {
    unfold.addEventListener("click", function () {
      rows.forEach(function (row) { row.classList.add("unfolded"); });
      unfold.disabled = true;
      unfold.textContent = "all " + rows.length + " layers shown";
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll('.chart g[id^="pt-"]'), function (point) {
    point.addEventListener("click", function () {
      var row = document.getElementById("row-" + point.id.slice(3));
      if (!row) { return; }
      row.classList.add("unfolded");
      row.classList.remove("hidden");
      rows.forEach(function (r) { r.classList.remove("highlight"); });
      row.classList.add("highlight");
      row.scrollIntoView({ block: "center" });
    });
  });
})();
