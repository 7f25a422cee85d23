// MLflow's UI keeps its GenAI / model-training mode and each experiment's runs table (columns, sort, filter,
// charts) in the browser's localStorage, and has no server-side default for either. The chargpt MLflow app
// (ui_app.py) puts this script at the top of the UI's page, ahead of MLflow's own deferred bundle, and calls
// seedMlflowUi with what the project's store holds.
//
// A browser gets each preference (the model-training mode, the assistant closed) it has no value for yet. An
// experiment's table gets the saved view (the named runs by test BPC, with BPC, accuracy and varied params as
// columns) where its columns hold no metric (MLflow's defaults: a first visit), or are still the ones this script
// seeded from an older view. A user's own choice of columns stays.
function seedMlflowUi(storage, preferences, views) {
  preferences.forEach(function (preference) {
    try {
      if (storage.getItem(preference.key) === null) {
        storage.setItem(preference.key, JSON.stringify(preference.value));
      }
    } catch (e) {
      // no storage (private mode, a full quota): MLflow's defaults
    }
  });
  views.forEach(function (view) {
    try {
      var stored = storage.getItem(view.key);
      var state = stored === null ? {} : JSON.parse(stored);
      var columns = Array.isArray(state.selectedColumns) ? state.selectedColumns : [];
      var hasMetric = columns.some(function (c) { return String(c).indexOf("metrics.") === 0; });
      var wanted = JSON.stringify(view.state.selectedColumns);
      var seededBefore = JSON.stringify(columns) === storage.getItem(view.seededKey);
      if (!hasMetric || (seededBefore && JSON.stringify(columns) !== wanted)) {
        storage.setItem(view.key, JSON.stringify(Object.assign(state, view.state)));
        storage.setItem(view.seededKey, wanted);
      }
    } catch (e) {
      // a state MLflow cannot read either: leave it to MLflow's own error
    }
  });
}
