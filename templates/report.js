// Slice viewers (slider over pre-rendered slices, layers that switch off) and click-to-enlarge.
(function () {
  "use strict";
  function setupViewer(viewer) {
    var anatomy = JSON.parse(viewer.dataset.anatomy);
    var base = viewer.querySelector("img.base");
    var layers = Array.prototype.slice.call(viewer.querySelectorAll("img.layer"));
    var slider = viewer.querySelector("input.slice");
    var label = viewer.querySelector(".slice-label");
    function show(k) {
      base.src = anatomy[k];
      layers.forEach(function (img) { img.src = JSON.parse(img.dataset.srcs)[k]; });
      label.textContent = "slice " + (k + 1) + " of " + anatomy.length;
      viewer.dataset.slice = String(k);
    }
    slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
    viewer.querySelectorAll("input.toggle").forEach(function (box) {
      var img = viewer.querySelector('img.layer[data-layer="' + box.value + '"]');
      box.addEventListener("change", function () { img.classList.toggle("off", !box.checked); });
    });
    var bare = viewer.querySelector("button.bare");
    if (bare) {
      bare.addEventListener("click", function () {
        var anyOn = layers.some(function (img) { return !img.classList.contains("off"); });
        viewer.querySelectorAll("input.toggle").forEach(function (box) {
          box.checked = !anyOn && box.dataset.default === "1";
          box.dispatchEvent(new Event("change"));
        });
        bare.textContent = anyOn ? "show outlines" : "image only";
      });
    }
    show(parseInt(slider.value, 10));
  }
  function setupLightbox() {
    var box = document.getElementById("lightbox");
    if (!box) { return; }
    var big = box.querySelector("img");
    document.querySelectorAll("img.zoom").forEach(function (img) {
      img.addEventListener("click", function (event) {
        event.preventDefault();
        big.src = img.dataset.full || img.src;
        big.alt = img.alt;
        box.classList.add("open");
      });
    });
    box.addEventListener("click", function () { box.classList.remove("open"); });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { box.classList.remove("open"); }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".viewer").forEach(setupViewer);
    setupLightbox();
  });
})();
