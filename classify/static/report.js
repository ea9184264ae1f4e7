// featurize report: inlined into every report by classify.html_report (no external resource).
// Sortable tables sort their body rows only: averages stay in the footer.
document.querySelectorAll('table.sortable thead th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
// The map: a thumbnail and the label of the point under the mouse.
(function () {
  var svg = document.getElementById('map'), tip = document.getElementById('tip');
  if (!svg) return;
  var thumbs = JSON.parse(document.getElementById('map-thumbs').textContent);
  svg.addEventListener('mousemove', function (ev) {
    var t = ev.target;
    if (!t.dataset || t.dataset.k === undefined) { tip.style.display = 'none'; return; }
    var img = thumbs[t.dataset.k];
    tip.innerHTML = (img ? '<img src="' + img + '"><br>' : '');
    tip.appendChild(document.createTextNode(t.dataset.label));
    tip.style.left = (ev.offsetX + 12) + 'px'; tip.style.top = (ev.offsetY + 12) + 'px';
    tip.style.display = 'block';
  });
  svg.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
})();
document.body.dataset.ready = 'yes';
